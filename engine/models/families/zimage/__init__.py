"""zimage"""
