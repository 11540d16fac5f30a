"""reimport"""
