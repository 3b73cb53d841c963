"""Redis pub/sub channel names shared by the control plane (publishers) and the gateways (listeners)."""

# Message: an institution id. Gateways reload that institution's units, models and providers.
CATALOG_CHANNEL = "eduaiq:catalog"
