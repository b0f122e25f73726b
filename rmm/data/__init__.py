"""rmm.data"""
