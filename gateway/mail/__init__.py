"""The mail side: the SMTP sender (`smtp`) and the sandbox mail server (`sandbox`)."""
