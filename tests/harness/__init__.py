"""Reusable test harnesses (not shipped: the library never imports tests)."""
