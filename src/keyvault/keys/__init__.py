"""The operations on a user's API key: the service (validate, seal, open, audit), its repository
(the key records' SQL), the group commit of PUTs, and the request and response schemas.
"""
