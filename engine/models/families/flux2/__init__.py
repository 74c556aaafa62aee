"""flux2"""
