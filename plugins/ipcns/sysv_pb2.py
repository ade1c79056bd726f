"""CRIU's ipc-desc/ipc-shm/ipc-sem/ipc-msg messages (images/ipc-*.proto, same
names and field numbers), built here from descriptors: the seam keeps a
plugin out of engine/images/proto, and no protoc runs at build time.

Two fields of the engine's own, numbered far from CRIU's: the length of
the raw bytes after an entry (ipc_sem_entry.values_bytes,
ipc_msg_entry.messages_bytes: plugins/ipcns/payloads.py), which CRIU's
readers skip as unknown fields.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_REQ, _OPT = _F.LABEL_REQUIRED, _F.LABEL_OPTIONAL
_U32, _U64, _BOOL, _MSG = _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL, _F.TYPE_MESSAGE

MESSAGES = {
    "ipc_desc_entry": [("key", 1, _REQ, _U32), ("uid", 2, _REQ, _U32), ("gid", 3, _REQ, _U32),
                       ("cuid", 4, _REQ, _U32), ("cgid", 5, _REQ, _U32),
                       ("mode", 6, _REQ, _U32), ("id", 7, _REQ, _U32)],
    "ipc_shm_entry": [("desc", 1, _REQ, "ipc_desc_entry"), ("size", 2, _REQ, _U64),
                      ("in_pagemaps", 3, _OPT, _BOOL), ("hugetlb_flag", 4, _OPT, _U32)],
    "ipc_sem_entry": [("desc", 1, _REQ, "ipc_desc_entry"), ("nsems", 2, _REQ, _U32),
                      ("values_bytes", 100, _OPT, _U32)],
    "ipc_msg": [("mtype", 1, _REQ, _U64), ("msize", 2, _REQ, _U32)],
    "ipc_msg_entry": [("desc", 1, _REQ, "ipc_desc_entry"), ("qbytes", 2, _REQ, _U32),
                      ("qnum", 3, _REQ, _U32), ("messages_bytes", 100, _OPT, _U32)],
}


def _build():
    proto = descriptor_pb2.FileDescriptorProto(name="engine-sysvipc.proto", syntax="proto2")
    for name, fields in MESSAGES.items():
        msg = proto.message_type.add(name=name)
        for fname, number, label, ftype in fields:
            f = msg.field.add(name=fname, number=number, label=label)
            if isinstance(ftype, str):
                f.type, f.type_name = _MSG, "." + ftype
            else:
                f.type = ftype
    pool = descriptor_pool.Default()
    try:
        pool.Add(proto)
    except TypeError:
        pass                # already added (a module reloaded)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
            for name in MESSAGES}


globals().update(_build())
