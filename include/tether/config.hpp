// SPDX-License-Identifier: BSL-1.0
// Build-mode and version macros: the one place where tether decides how its definitions are compiled.
#pragma once

#define TETHER_VERSION_MAJOR 0
#define TETHER_VERSION_MINOR 1
#define TETHER_VERSION_PATCH 0
#define TETHER_VERSION (TETHER_VERSION_MAJOR * 10000 + TETHER_VERSION_MINOR * 100 + TETHER_VERSION_PATCH)

// Header-only is the default. TETHER_SEPARATE_COMPILATION (set by the Meson dependency and the pkg-config file)
// means the definitions in impl/*.ipp come from libtether instead of being included inline.
#if defined(TETHER_SEPARATE_COMPILATION)
#  define TETHER_HEADER_ONLY 0
#  define TETHER_DECL
#else
#  define TETHER_HEADER_ONLY 1
#  define TETHER_DECL inline
#endif

// Process-wide state (main_thread()) must stay one object even when header-only code is built into several shared
// objects with -fvisibility=hidden: its accessor keeps default visibility.
#define TETHER_VISIBLE __attribute__((visibility("default")))

// Sanitizer builds scale stress tests down; g++ defines these, clang reports them through __has_feature.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#  define TETHER_SANITIZED 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#    define TETHER_SANITIZED 1
#  endif
#endif
#ifndef TETHER_SANITIZED
#  define TETHER_SANITIZED 0
#endif
// 1: freed task records are kept for reuse (detail/block_cache.hpp). AddressSanitizer builds default
// to 0, since recycled memory hides a use after free from it; define it to 0 for valgrind or other checkers too.
#ifndef TETHER_RECYCLE_MEMORY
#  if defined(__SANITIZE_ADDRESS__)
#    define TETHER_RECYCLE_MEMORY 0
#  elif defined(__has_feature)
#    if __has_feature(address_sanitizer)
#      define TETHER_RECYCLE_MEMORY 0
#    endif
#  endif
#endif
#ifndef TETHER_RECYCLE_MEMORY
#  define TETHER_RECYCLE_MEMORY 1
#endif
