print("moe-serve")
