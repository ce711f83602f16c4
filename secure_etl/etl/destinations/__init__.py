"""Destinations: one module per ``type:``, registered in ``secure_etl.etl.registry``."""
