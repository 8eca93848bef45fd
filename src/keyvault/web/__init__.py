"""The HTTP face of keyvault: create_app(), the routes, the one problem+json mapping, middleware,
the server protocol and the /docs page. The only package, with cli, that imports the web framework.
"""
