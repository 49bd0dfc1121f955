"""llmsup's control plane: job store, cluster manager, dispatcher and watchdog."""

__version__ = "0.1.0"
