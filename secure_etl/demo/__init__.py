"""The bundled offline demo config."""
