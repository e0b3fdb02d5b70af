"""Load: the asyncio bench client, a blocking client, and the Locust users."""
