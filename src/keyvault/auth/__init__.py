"""Who is calling and what they may do: a bearer JWT becomes a Principal with scopes (a StrEnum),
verified against the HS256 secret or the identity provider's key set; step-up rules.
"""
