"""forcefield.so3"""
