"""Field-device protocol clients (Modbus TCP, OPC UA), point maps, codecs and the field simulator."""
