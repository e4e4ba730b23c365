"""The AscendCL C ABI over the farm: headers, the libraries' Python half, the toolkit-tree builder.

Layer: beside ``acl`` (the pyACL facade); it imports ``client``, ``device`` and ``core``, never
``acl``, ``farm`` or ``loadtest``.
"""

__all__: list[str] = []
