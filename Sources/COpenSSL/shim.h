// Debian's OpenSSL (libssl-dev): SHA-1 and base64 for the WebSocket handshake.
#include <openssl/sha.h>
#include <openssl/evp.h>
