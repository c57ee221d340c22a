"""Operator commands' work: doctor, verify, restore, catalog, launchd, rebuild-ledger, plan.

Each module does the work of one command and returns data; ``horos_async.cli`` parses flags and prints.
"""
