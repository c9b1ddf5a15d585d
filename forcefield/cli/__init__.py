"""The one command layer: every subcommand (train, evaluate, export, md, relax, convert) is a
module here, parsed and composed the same way from ``conf/<subcommand>.yaml``
(:mod:`.command`, :mod:`.compose`), calling one plain function that does the work."""
