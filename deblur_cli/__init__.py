"""msdn: remove motion blur from photographs with a Multi-Scale Dense Network (Song & Wu 2019)."""

__version__ = "0.1.0"
