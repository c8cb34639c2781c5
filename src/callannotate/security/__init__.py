"""Security: who is calling (principals), and later authentication and encryption."""
