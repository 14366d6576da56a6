"""The local stand-in of Tracktion production used by the demo and the tests."""
