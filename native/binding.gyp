{
  "targets": [
    {
      "target_name": "freeflow_native",
      "sources": ["syscalls.cc", "poller.cc", "acceptor.cc", "addon.cc", "rdma/engine.cc", "rdma/doorbells.cc", "rdma/memory.cc", "rdma/addon_rdma.cc", "rdma/tcp_transport.cc", "rdma/peer_auth.cc", "host_socket_guard.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "../libfsocket/verbs", "../libfsocket"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O2", "-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lcrypto", "-lbpf"]
    }
  ]
}
