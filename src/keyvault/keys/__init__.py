"""The operations on a user's API keys, one per provider: the service (validate, seal, open, audit), its repository
(the key records' SQL), the group commit of PUTs, and the request and response schemas.
"""
