"""The provider proxy's forwarding: which paths a provider allows, the headers that go on and come
back, the user's key redacted from every answer, and one pooled HTTP client per provider.
"""
