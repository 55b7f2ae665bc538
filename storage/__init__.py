"""Persistence for emr_hub: database engine and tables, object stores, migrations.

This package never imports ``emr_hub``; the hub depends on it, not the other way round.
"""
