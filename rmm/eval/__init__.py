"""rmm.eval"""
