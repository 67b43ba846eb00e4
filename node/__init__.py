"""The node shell: asyncio application (aiohttp API, SQLite ledger) around the pure protocol.

Only ``node.p2p`` imports libp2p or trio; everything else talks to it through its small
asyncio interface.
"""
