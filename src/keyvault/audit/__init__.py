"""The hash-chained audit trail: the events and their HMAC chain, the writer that commits them,
their SQL, and the queries that read them back and verify the chain.
"""
