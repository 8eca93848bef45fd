"""The providers whose keys keyvault keeps: the registry (openai and anthropic built in, more from
KEYVAULT_PROVIDERS_FILE), and asking a provider whether a key works before it is saved.
"""
