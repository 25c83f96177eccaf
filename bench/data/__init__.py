"""Single-cell images in: class folders read and checked (:mod:`.imagefolder`), BloodMNIST
(:mod:`.bloodmnist`) and the embedded synthetic cells (:mod:`.synthetic`, drawn by
:mod:`.cell_drawing`); the stratified split and its manifest (:mod:`.split`); every image decoded
once into the store (:mod:`.store`); batches with augmentation on the device (:mod:`.loader`,
:mod:`.transforms`); and all of it assembled for a run (:mod:`.build`).
"""
