"""llmsup's FastAPI front end."""
