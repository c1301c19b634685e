"""Preference optimisation: the losses side by side (`losses`), the method registry that names each
method's loss and needs (`methods`), what SFT and preference training share (`optim`) and training
state as files (`checkpoints`). A method of your own: `from semdpo_core.preference.methods import
Method, register`."""
