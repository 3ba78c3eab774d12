#!/usr/bin/env python3
"""Serving a distillrec checkpoint from Python through the C interface (ctypes, no build step).

    python3 examples/serve_ctypes.py --lib build/libdistillrec_c.so --checkpoint model.safetensors \
        --history 3 17 42 --k 5

Opens the model, prints its top-k for the history, then builds a session event by event,
saves it to bytes, loads it back and prints the session's top-k (equal to the history's) as
JSON. Errors arrive as status codes with a message, raised here as DistillrecError.
"""
import argparse
import ctypes
import json
import sys


class Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 512)]


class ScoredItem(ctypes.Structure):
    _fields_ = [("item", ctypes.c_int32), ("score", ctypes.c_float)]


class DistillrecError(RuntimeError):
    def __init__(self, code, message):
        super().__init__(f"distillrec error {code}: {message}")
        self.code = code


class Library:
    """The C functions with their signatures (include/distillrec/c/distillrec.h)."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        p, c = ctypes.POINTER, ctypes
        sig = {
            "distillrec_open": [c.c_char_p, c.c_char_p, c.c_int, p(c.c_void_p), p(Error)],
            "distillrec_model_info": [c.c_void_p, p(c.c_int64), p(c.c_char_p), p(c.c_char_p), p(Error)],
            "distillrec_top_k": [c.c_void_p, p(c.c_int32), c.c_size_t, c.c_int32, c.c_int, p(ScoredItem), p(c.c_size_t), p(Error)],
            "distillrec_session_create": [c.c_void_p, p(c.c_void_p), p(Error)],
            "distillrec_session_append": [c.c_void_p, c.c_void_p, c.c_int32, p(Error)],
            "distillrec_session_top_k": [c.c_void_p, c.c_void_p, c.c_int32, c.c_int, p(ScoredItem), p(c.c_size_t), p(Error)],
            "distillrec_session_save": [c.c_void_p, c.c_void_p, c.c_void_p, c.c_size_t, p(c.c_size_t), p(Error)],
            "distillrec_session_load": [c.c_void_p, c.c_char_p, c.c_size_t, p(c.c_void_p), p(Error)],
        }
        for name, args in sig.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        self.lib.distillrec_close.argtypes, self.lib.distillrec_close.restype = [ctypes.c_void_p], None
        self.lib.distillrec_session_free.argtypes, self.lib.distillrec_session_free.restype = [ctypes.c_void_p], None

    def call(self, name, *args, allow=()):
        err = Error()
        status = getattr(self.lib, name)(*args, ctypes.byref(err))
        if status != 0 and status not in allow:
            raise DistillrecError(status, err.message.decode())
        return status


class Model:
    def __init__(self, lib, checkpoint, precision="fp32"):
        self.lib, self.handle = lib, ctypes.c_void_p()
        lib.call("distillrec_open", checkpoint.encode(), precision.encode(), 0, ctypes.byref(self.handle))
        n, name, scoring = ctypes.c_int64(), ctypes.c_char_p(), ctypes.c_char_p()
        lib.call("distillrec_model_info", self.handle, ctypes.byref(n), ctypes.byref(name), ctypes.byref(scoring))
        self.num_items, self.name, self.scoring = n.value, name.value.decode(), scoring.value.decode()

    def top_k(self, history, k):
        items = (ctypes.c_int32 * len(history))(*history)
        out, count = (ScoredItem * k)(), ctypes.c_size_t()
        self.lib.call("distillrec_top_k", self.handle, items, len(history), k, 1, out, ctypes.byref(count))
        return [(out[i].item, out[i].score) for i in range(count.value)]

    def session(self):
        return Session(self)

    def close(self):
        self.lib.lib.distillrec_close(self.handle)


class Session:
    def __init__(self, model, handle=None):
        self.model, self.handle = model, handle or ctypes.c_void_p()
        if handle is None:
            model.lib.call("distillrec_session_create", model.handle, ctypes.byref(self.handle))

    def append(self, item):
        self.model.lib.call("distillrec_session_append", self.model.handle, self.handle, item)

    def top_k(self, k):
        out, count = (ScoredItem * k)(), ctypes.c_size_t()
        self.model.lib.call("distillrec_session_top_k", self.model.handle, self.handle, k, 1, out, ctypes.byref(count))
        return [(out[i].item, out[i].score) for i in range(count.value)]

    def save(self):
        size = ctypes.c_size_t()
        self.model.lib.call("distillrec_session_save", self.model.handle, self.handle, None, 0, ctypes.byref(size), allow=(5,))
        buffer = ctypes.create_string_buffer(size.value)
        self.model.lib.call("distillrec_session_save", self.model.handle, self.handle, buffer, size.value, ctypes.byref(size))
        return buffer.raw[: size.value]

    @staticmethod
    def load(model, blob):
        handle = ctypes.c_void_p()
        model.lib.call("distillrec_session_load", model.handle, blob, len(blob), ctypes.byref(handle))
        return Session(model, handle)

    def free(self):
        self.model.lib.lib.distillrec_session_free(self.handle)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", required=True, help="path of libdistillrec_c.so")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    parser.add_argument("--history", type=int, nargs="+", default=[3, 17, 42])
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    model = Model(Library(args.lib), args.checkpoint, args.precision)
    try:
        top = model.top_k(args.history, args.k)
        session = model.session()
        for item in args.history:
            session.append(item)
        blob = session.save()
        restored = Session.load(model, blob)
        from_session = restored.top_k(args.k)
        session.free()
        restored.free()
        try:  # a bad query: the error comes back as an exception, the model stays usable
            model.top_k([model.num_items + 1], args.k)
            bad = None
        except DistillrecError as e:
            bad = str(e)
        print(json.dumps({"model": model.name, "items": model.num_items, "scoring": model.scoring,
                          "top_k": top, "session_top_k": from_session, "session_bytes": len(blob),
                          "same": [i for i, _ in top] == [i for i, _ in from_session], "bad_query": bad}))
        return 0 if [i for i, _ in top] == [i for i, _ in from_session] and bad else 1
    finally:
        model.close()


if __name__ == "__main__":
    sys.exit(main())
