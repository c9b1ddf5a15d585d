"""forcefield.training"""
