"""forcefield.nn"""
