"""`must adapt`: command (inputs, device, processes, starting model, run folder, --predict) and train (on every
process: loader, networks, Trainer, then both models' labels, the guard and the model file)."""
