"""rmm.report"""
