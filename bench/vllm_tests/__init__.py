"""Run vLLM's own OpenAI-entrypoint tests against ``llmsup serve`` (see ``run.py``)."""
