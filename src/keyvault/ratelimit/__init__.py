"""Request budgets per client address, per token subject and per service token, kept in this
process's memory or in a Redis shared by every replica.
"""
