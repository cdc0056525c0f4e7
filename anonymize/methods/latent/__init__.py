"""The StyleGAN2 W+ toolkit the latent methods share (FALCO, CFA, camouflage, parts, attribute edits).

- :mod:`.stack`: e4e, the generator, ArcFace and FaRL, opened and checked once per method;
- :mod:`.params`: :class:`~.params.LatentParams`, the options every W+ method takes;
- :mod:`.optimize`: :func:`~.optimize.optimise_codes`, the loop, with the method's loss and schedule passed in;
- :mod:`.bank` and :mod:`.pairing`: the cached bank of fake faces and the nearest-fake search;
- :mod:`.references`: a folder of reference faces, embedded one image at a time;
- :mod:`.saved`: a face's final code written beside the output.

Nothing is imported here, so importing one module does not load the others.
"""
