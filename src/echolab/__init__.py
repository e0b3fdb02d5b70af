"""echolab: threads or asyncio, and where does each one break?"""

__version__ = "0.1.0"
