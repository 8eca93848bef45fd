"""Record format v3: how an API key is sealed at rest (HKDF from the root key, AES-256-GCM, the
owner and provider in the AAD) and the keyring of root keys. No I/O; imports no other keyvault package.
"""
