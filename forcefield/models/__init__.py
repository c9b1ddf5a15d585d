"""forcefield.models"""
