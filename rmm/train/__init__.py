"""rmm.train"""
