"""sdxl"""
