"""forcefield.data"""
