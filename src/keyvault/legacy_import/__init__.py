"""Import from the seed application: open its Fernet tokens (PBKDF2 per-user salts) and seal each
user's key anew as the user's openai key.
"""
