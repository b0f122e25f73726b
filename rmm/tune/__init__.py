"""rmm.tune"""
