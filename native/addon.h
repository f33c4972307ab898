// Registration hooks of the native modules that make up the addon.
#pragma once
#include <napi.h>

void InitSyscalls(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitAcceptor(Napi::Env env, Napi::Object exports);
void InitRdma(Napi::Env env, Napi::Object exports);
