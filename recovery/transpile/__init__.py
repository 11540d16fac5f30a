"""transpile"""
